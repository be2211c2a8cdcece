"""bench: adaptation-method benchmark harness."""
