"""Qt-free core: reading images, models, inference. Never imports Qt or the trainer."""
