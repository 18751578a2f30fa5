"""Track A, paper A's Section 2.1: retrieval-augmented synthetic VQA data from unlabeled images.

One module per step, each step a backend chosen in the profile (`synth:`):

    regions.py    region proposals: classical (scikit-image) | sam (segment-anything) [+ a detector's boxes]
    naming.py     naming by retrieval: CLIP crops against a visual-text database built from CODA-LM Train
    knowledge.py  knowledge retrieval: a JSONL knowledge base searched with TF-IDF or BM25
    caption.py    the raw caption: a VLM as captioner
    writer.py     refine + self-instruct: template (offline stand-in) | openai (any OpenAI-compatible LLM)
    pipeline.py   the pool through every step, chunk by chunk (resumable), written as a CODA-LM split + card
    quality.py    measurements only the toy world allows (its hidden scene graphs)
    figures.py    each step shown on a few images
"""
