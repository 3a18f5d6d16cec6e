"""MuJoCo tasks (gymnasium), experts, disturbances, the simulated plant and datasets."""
