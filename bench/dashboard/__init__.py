"""`bench-dashboard`: a W&B workspace and a W&B report per sweep (or protocol finals), built with the
`wandb-workspaces` library from the runs' result.json files (spec: the panels; objects: the library's classes;
cli: writing, checking and publishing)."""
