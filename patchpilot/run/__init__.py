"""The run: typed states and their transitions (states), pure decisions (decide), every store
session of a run (journal), the batch steps (steps) and the run's lifecycle (lifecycle).
docs/architecture.md follows a run through them. Nothing is imported here, so that
`run.ids` stays light."""
