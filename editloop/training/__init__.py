"""Trainer: datasets, rewards, sandbox, SFT, GRPO, gate, cycle, worker (trainer issue)."""
