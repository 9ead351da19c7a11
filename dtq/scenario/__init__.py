"""Chaos scenarios: the TOML model, its workload, and the runners that play it.

The rule: a scenario means the same on both backends. `model` loads and validates a file;
`workload` turns it into submissions; `sim` plays it on the deterministic simulator and `real`
on real processes (faults on links through `links`, Toxiproxy-compatible proxies); both
produce one history that `dtq.checker` judges. `explore` and `swarm` run many seeds.
"""
