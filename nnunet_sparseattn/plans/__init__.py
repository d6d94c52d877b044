"""Plans that choose among the network variants (planners called through nnU-Net's ``plan_experiment_dataset``).

Not built yet: no planner ships so far; the trainers read nnU-Net's default plans.
"""
