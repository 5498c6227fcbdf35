# (evaluation rules: being wired to bcm eval / bcm sample)
