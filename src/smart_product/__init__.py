"""smart-product: multimodal product categorization with honest, per-fold cross-validation."""

__version__ = "0.1.0"
