"""The app's model hosting: depends on chat_format, models and runtime, never on evaluation."""
