"""Tools that convert and verify the published SE checkpoints.

    python -m weights.convert CHECKPOINT --model NAME --out FILE.weights.h5
    python -m weights.convert --list
"""
