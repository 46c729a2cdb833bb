"""Networks: the CIFAR ResNet classifier (and, added by the data-free methods, generators)."""
