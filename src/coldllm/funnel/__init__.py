"""The ColdLLM funnel: coupled filter -> LLM refiner -> simulated interactions -> update."""
