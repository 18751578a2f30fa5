"""Models: tiny offline builders and one loader for real VLMs and CLIPs."""
