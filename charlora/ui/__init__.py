"""The Gradio app: one file per tab. It only calls the engine's public functions."""
