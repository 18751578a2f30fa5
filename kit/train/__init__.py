"""Training helpers shared by the stages: TRL dataset rows for VLMs and the SFT wrapper."""
