"""The Large Decision Model (LDM-v0): tokenizer, model, data, trainer, policy."""
