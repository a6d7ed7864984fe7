"""ConverSeg-Net (SAM2 prompted by a VLM's hidden states): checkpoint conversion and helpers."""
