"""Track B evaluation: answer parser, official BDD-OIA metrics, batched generation, figures."""
