"""Training: model resolution without a hub (models), LoRA/QLoRA with trl (train), the LoRA
term fused into the GEMM epilogue (fused_lora), and FP8 products for the frozen base (fp8_base,
fp8_kernels)."""
