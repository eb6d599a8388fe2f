class AdminVM:
    name = "dom0"
