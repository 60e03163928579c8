"""Chapter 11 (前沿专题): compiled decode, FlashAttention, custom operators, and the other advanced topics."""
