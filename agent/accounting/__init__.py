"""Pure accounting: counter resets, energy attribution, cost and windowed ratios. No I/O."""
