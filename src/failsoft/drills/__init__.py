"""Chaos drills: experiments, the load driver, the scorecard and its chart."""
