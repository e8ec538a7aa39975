"""The policy's side of an inner run: what it observes, how it acts and is rewarded, and how it learns.

Features (:mod:`.feature_transforms`, assembled by :mod:`.observation`), actions on ``param_groups``
(:mod:`.actions`), the reward (:mod:`.reward`), the networks and their files (:mod:`.policy`,
:mod:`.policy_file`), the one decision step every driver shares (:mod:`.actor`) and the wrappers
around it (:mod:`.residual`), the guard that undoes a diverging step (:mod:`.guard`), one run as a
gymnasium environment (:mod:`.env`), a task's episodes against its baseline (:mod:`.rollout`) and
cloning from demonstrations (:mod:`.imitation`).

Nothing is imported here: the drop-in optimizer (:mod:`lhopt_dsl.controller`) imports the modules
it needs one by one, so it never loads gymnasium or the task builder that :mod:`.env`,
:mod:`.rollout` and :mod:`.imitation` need.
"""
