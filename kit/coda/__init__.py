"""Track A: CODA-LM as VQA (kit.coda.vqa) and its submission files."""
