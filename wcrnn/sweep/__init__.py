"""The sweep service: specs → Ray Tune + Optuna → MLflow. Builds on the science core."""
