"""Human evaluation: blind side-by-side ratings of two systems' answers, and what they say.

- :mod:`components.human_eval.session`: the items (a test row, two systems' answers) from evaluate
  steps' predictions, and their seeded assignment to raters with overlap and left/right order.
- :mod:`components.human_eval.store`: the session in SQLite: no acknowledged vote lost, none counted twice.
- :mod:`components.human_eval.statistics`: per pair of systems, wins, ties and losses with Wilson
  intervals; Bradley-Terry strengths with bootstrap intervals; rater agreement (Cohen's kappa,
  Krippendorff's alpha); position bias; how often an automatic metric prefers the raters' answer.
"""
