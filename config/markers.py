"""Names the synthesized assembly carries for the pipeline's steps. Standard library only: the steps read them
without the CDK or pydantic installed."""

# The synth warning (on an environment's stacks, or the pipeline stack) that names an example value left in the
# config: `make synth` lists them, the pipeline's pre-step refuses to deploy an environment that has one.
EXAMPLE_VALUE = "coder:example-value"
