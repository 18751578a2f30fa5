"""LLM-as-judge for CODA-LM: prompts, backends (rubric, openai), scores, battles and Elo."""
