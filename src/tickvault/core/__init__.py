"""Record kinds, frames and their codec, the error tree, events, rules, settings."""
