"""Command-line tools that are not pipeline steps: try a model, count its parameters, write the tiny tasks, write docs/cli.md."""
