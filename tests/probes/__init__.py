"""One test file per family of probes: each rule's bad model confirmed with its fix verified, and a finding
forced on a healthy model (a rule threshold monkeypatched lower, or the finding built by hand where the rule
has no threshold) not reproduced."""
