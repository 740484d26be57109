"""Pure math of post-training on `mx.array`: log-probabilities, advantages, KL estimators and losses.

One module per idea (logprobs, sft, kl, advantages, policy_gradient, ppo, dpo); no config objects,
no logging, no I/O. docs/algorithms.md lists every formula with its paper.
"""
