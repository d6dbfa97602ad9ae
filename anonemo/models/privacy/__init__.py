"""What the base pays for identity in each adversarial step: one module per method, each a
:class:`~anonemo.models.privacy.term.PrivacyTerm` named by its ``conf/model/<method>.yaml``.

==========================  ======================  =================================================
module                      ``model=``              the term
==========================  ======================  =================================================
``refitted_adversary``      ``hybrid``,             frozen identity head(s), re-fitted after every
                            ``hybrid_robust``,      round (the paper's Algorithm 1; the recommended
                            ``hybrid_standardised`` standardised ensemble)
``gradient_reversal``       ``grl``                 one identity head trained jointly through a
                                                    gradient reversal (Ganin & Lempitsky 2015)
``maxent``                  ``maxent``              an adversary trained on identity, the base
                                                    maximising its posterior's entropy (Roy &
                                                    Boddeti 2019)
``hsic``                    ``hsic``                no adversary: HSIC between features and identity
                                                    (Gretton et al. 2005)
==========================  ======================  =================================================

How the term's weight β is set (fixed, the emotion guard, the emotion budget) is the other half of
a method, the same for every term: :mod:`anonemo.models.weight`.
"""
