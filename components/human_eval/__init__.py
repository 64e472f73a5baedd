"""Human evaluation: blind side-by-side ratings of two systems' answers, and what they say (``steps/rate.py``).

- :mod:`components.human_eval.session`: the items (a test row, two systems' answers) from evaluate
  steps' predictions, and their seeded assignment to raters with overlap and left/right order.
- :mod:`components.human_eval.store`: the session in SQLite: no acknowledged vote lost, none counted twice.
- :mod:`components.human_eval.web`: the raters' page and the results view (Flask; ``templates/``, ``static/``).
- :mod:`components.human_eval.statistics`: per pair of systems, wins, ties and losses with Wilson
  intervals; Bradley-Terry strengths with bootstrap intervals; rater agreement (Cohen's kappa,
  Krippendorff's alpha); position bias; how often an automatic metric prefers the raters' answer.
- :mod:`components.human_eval.summary`: all of them for one session, with the sentence-level metric scores.
- :mod:`clearml_adapter.human_evaluation`: the summary in the session's ClearML task, and on the registered models rated.
- :mod:`components.human_eval.label_studio`: the session as a Label Studio project, and its JSON export back as votes.
"""
