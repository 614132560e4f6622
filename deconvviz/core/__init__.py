"""The engine: trace a model (graph), run it once recording what rules ask for (capture), choose seeds, walk back."""
