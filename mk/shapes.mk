# model rules for shapes demo models (issue 4)
