"""The iterate loop (`stage=iterate`): a third wing beside prepare and train. NeMo Gym collects
rollouts of the served policy (gym), the prepare and train stages run through their command line
(plan), the new policy is served again (serving) and evaluated on held-out tasks (stats), round
after round (state, stage, report). Tools it needs are installed once by recipe.iterate.setup."""
