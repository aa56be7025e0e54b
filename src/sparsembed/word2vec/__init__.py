"""word2vec"""
