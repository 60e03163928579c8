"""Speculative decoding (chapter 9): a cheap drafter proposes k tokens, the target verifies them in
one forward pass, and the accept/reject rule guarantees the target's own output distribution.

    drafters.py  one `Drafter` interface: n-gram prompt lookup, self-draft (first m layers),
                 an RTN-quantized copy of the target (chapter 8)
    verify.py    greedy verification and speculative sampling (min(1, p/q), residual max(0, p-q))
    decode.py    the single-request draft-verify loop over the contiguous KV cache, with statistics
    medusa.py    Medusa-1 heads on the target's hidden state: self-distillation, training, the drafter
    theory.py    expected tokens per target step and the speedup model with draft cost c
"""
from .decode import SpecResult, speculative_generate
from .drafters import Draft, Drafter, ModelDrafter, NgramDrafter, QuantizedDrafter, SelfDraftDrafter, truncated_model
from .medusa import MedusaDrafter, MedusaHeads, distill_set, head_accuracy, save_medusa_checkpoint, train_heads
from .theory import expected_tokens, fit_alpha, speedup
from .verify import greedy_verify, rejection_step, residual_distribution, speculative_verify

__all__ = ["Draft", "Drafter", "MedusaDrafter", "MedusaHeads", "ModelDrafter", "NgramDrafter", "QuantizedDrafter",
           "SelfDraftDrafter", "SpecResult", "distill_set", "expected_tokens", "fit_alpha", "greedy_verify",
           "head_accuracy", "rejection_step", "residual_distribution", "save_medusa_checkpoint", "speculative_generate",
           "speculative_verify", "speedup", "train_heads", "truncated_model"]
