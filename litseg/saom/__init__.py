"""SAOM (Segment Any Object Model): nearest-neighbour point-grid prompts for SAM fine-tuning."""
