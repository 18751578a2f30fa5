"""Paper A's published numbers, shown beside the kit's own (notebooks 04 and 07, `kit figures`).

Table 1 of the paper: the overall score (0-100, its LLM judge) of three base models, Direct, SFT on
CODA-LM's Train split, and the method with 30k and 200k synthetic samples; and the final MiniCPM's
score per task.
"""
from __future__ import annotations

PAPER_A_TABLE1 = {"LLaVA-Next-8B": {"Direct": 30.33, "SFT": 40.24, "Ours w/ 30k": 49.79, "Ours w/ 200k": 54.13},
                  "CogVLM2-19B": {"Direct": 39.43, "SFT": 50.43, "Ours w/ 30k": 57.99, "Ours w/ 200k": 60.84},
                  "MiniCPM-V-8B": {"Direct": 42.67, "SFT": 60.90, "Ours w/ 30k": 63.12, "Ours w/ 200k": 71.87}}
PAPER_A_FINAL_TASKS = {"general_perception": 54.41, "region_perception": 83.01, "driving_suggestion": 71.76}
