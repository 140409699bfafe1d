"""Training: model resolution without a hub (models), LoRA/QLoRA with trl (train), and the LoRA
term fused into the GEMM epilogue (fused_lora)."""
