"""The ClearML adapter: the one place that talks to ClearML.

``tracking`` (a step's task: its arguments, artifacts, scalars, models, and how it ends on an error),
``connection`` (a server or offline mode: ClearML's own configuration, the reachability check) and
``human_evaluation`` (a rating session's verdict on its task). The library (``components``) never
imports ClearML; steps and pipelines reach it through here.
"""
