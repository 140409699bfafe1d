"""Training: model resolution without a hub (models), LoRA/QLoRA with trl (train), the memory
budget (budget), the LoRA term fused into the GEMM epilogue (fused_lora), FP8 products for the
frozen base (fp8_base, fp8_kernels), the input table in host memory (host_embedding), and what
loragate changes in trl's offloader (offload), trainer bookkeeping (bookkeeping), trl's fused loss
picking labelled positions by a count taken at collation (counted_labels) and transformers'
packed-sequence detection (packed_mask)."""


def mix_in(obj, mixin: type) -> bool:
    """Give the object `mixin`'s methods ahead of its own class's (its type becomes a subclass of
    both), so the methods can fall back to the library's through super(); False if already mixed."""
    if isinstance(obj, mixin):
        return False
    obj.__class__ = type(type(obj).__name__, (mixin, type(obj)), {})
    return True
