from sparsembed.entry import command

command()
