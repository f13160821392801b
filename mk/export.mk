# model rules for classify/embed defaults (issue 3)
