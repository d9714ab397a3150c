"""clipdistill: distil CLIP into small students and judge them inside a LLaVA-style VLM."""

__version__ = "0.1.0"
