"""Which predictions deserve a human look: uncertainty scores, a learned error model, the budget
gate and the per-model-version router that combines them (pure logic; the agents call it)."""
