"""Training stages on top of TRL: SFT now; DPO, reward model and online RL in their own modules."""
