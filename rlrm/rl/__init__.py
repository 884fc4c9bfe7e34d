"""RL runs on a learned reward: agent specs, the env stack, agent files, callbacks, evaluation and run folders."""
