"""The neutral chat request of agentary-js, checked field by field (the providers translate it)."""
