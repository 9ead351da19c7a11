"""Running actors as OS processes: the production side of "one actor code, two backends".

The rule: this package holds everything a node needs that the pure core must not touch (time,
signals, threads, files, sockets). `node` drives one actor against a transport and a store;
`process` is the entry point of one node and the supervisor of many; `tasks` and `sandbox` give
task code the real world, contained; `logs`, `metrics` and `stagemarks` say what happened.
"""
